"""File formats shared by every stage: images, atomic writes, safe checkpoint loading."""
