"""Synthetic RDS-HQ clips: scenes with moving vehicles rendered as shaded boxes, with ground truth."""
