"""Tiny stand-ins for the official HPA-Cell-Segmentation networks, for tests: the same interface
(3 x H x W normalised input -> background, border, interior logits) and saved the same way (the
module pickled whole with ``torch.save``), so loading them exercises the real loading code."""

import torch


class StandInUNet(torch.nn.Module):
    """Interior where the strongest input channel is bright, border where it changes."""

    def __init__(self, level: float = 0.5):
        super().__init__()
        self.level = level
        self.smooth = torch.nn.AvgPool2d(5, stride=1, padding=2)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        signal = self.smooth(x.max(dim=1, keepdim=True).values)
        edge = (signal - self.smooth(signal)).abs()
        interior = 3.0 * (signal - self.level)
        border = 8.0 * edge - 2.0
        return torch.cat([torch.zeros_like(signal), border, interior], dim=1)


def save_standins(folder) -> tuple[str, str]:
    """Write a nuclei and a cell stand-in model as the official files are written."""
    nuclei, cell = f"{folder}/nuclei_model.pth", f"{folder}/cell_model.pth"
    torch.save(StandInUNet(level=0.0), nuclei)
    torch.save(StandInUNet(level=-1.0), cell)
    return nuclei, cell
