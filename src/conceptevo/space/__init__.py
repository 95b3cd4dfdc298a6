"""The unified semantic space: co-activation, neuron and image embeddings, projection, map."""
