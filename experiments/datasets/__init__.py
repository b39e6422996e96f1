"""One module per dataset: the embedded generators (digits, point shapes, moving digits, road
graphs, shape scenes, 3D rooms) and the readers of real data from ``--data-dir`` (CIFAR,
ImageFolder, ModelNet40/ScanObjectNN, clip folders, Argoverse-1, VQAv2, Karpathy splits,
ScanQA). A dataset knows its layout and its samples, not the model that reads them."""
