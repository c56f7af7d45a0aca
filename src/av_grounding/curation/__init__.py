"""Curation stages: extract frames and labels, transform to camera boxes, filter, validate."""
