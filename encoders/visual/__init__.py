"""Visual backbones (ViT, video ViT, Point-BERT-style, VectorNet, joint image/points + text), each
keeping its transformer blocks in ``blocks`` so the frozen LM block is appended the same way."""
