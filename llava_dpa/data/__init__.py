"""LLaVA-format data: tokenization with image placeholders, label masks, images and anyres tiles."""
