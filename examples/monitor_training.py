"""A plain PyTorch training script with ConceptEvo's monitor added (three lines, marked).

    python examples/monitor_training.py [--lr 0.003] [--epochs 6] [--workspace monitor-study]

It trains ConceptEvo's small VGG on the concept world (generated, no download) and snapshots
the model after every epoch. Run it with ``--lr 0.03`` to see the concept-collapse flag of a
learning rate that is too high, and watch it live in another shell:

    conceptevo serve monitor-study
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import conceptevo
from conceptevo.data.concept_world import ConceptWorld
from conceptevo.data.models import SmallVGG
from conceptevo.data.probe import ProbeSet

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def to_tensor(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workspace", default="monitor-study")
    ap.add_argument("--run", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    world = ConceptWorld(seed=0)
    train, val = world.generate(3000, "train"), world.generate(600, "val")
    x_train, y_train = to_tensor(train.images), torch.from_numpy(train.labels)
    x_val, y_val = to_tensor(val.images), torch.from_numpy(val.labels)
    model = SmallVGG(num_classes=len(world.class_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # (1) the monitor: a probe set (here 600 training images) and a workspace
    probe = ProbeSet(train.images[:600], train.labels[:600], [f"#{i}" for i in range(600)],
                     list(world.class_names), MEAN, STD)
    monitor = conceptevo.Monitor(args.workspace, probe, run=args.run or f"lr{args.lr:g}",
                                 on_flag=lambda flag: print(f"  !! {flag.rule} at epoch "
                                                            f"{flag.epoch}: {flag.message}"))
    monitor.on_epoch_end(model, 0)                                 # (2) the initialisation

    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train))
        correct, total_loss = 0, 0.0
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_train[idx]).sum().item()
        model.eval()
        with torch.no_grad():
            val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        metrics = {"train_loss": total_loss / len(order), "train_acc": correct / len(order),
                   "val_acc": val_acc}
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        monitor.on_epoch_end(model, epoch, metrics=metrics)       # (3) after every epoch


if __name__ == "__main__":
    main()
