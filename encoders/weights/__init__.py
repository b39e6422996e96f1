"""Checkpoint bytes: tensor tables, byte-range readers (safetensors, torch.save zips), checkpoint
folders local or remote, and the local cache of single layers. Knows nothing of LM families."""
