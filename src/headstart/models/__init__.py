"""The networks: the backbone contract and its timm / VGG16 adapters, weight sources, the classifier,
the factory, saving and loading, freezing strategies and feature extraction."""
