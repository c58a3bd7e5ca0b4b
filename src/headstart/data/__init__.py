"""The photos: dataset layouts and manifests, image decoding, datasets and their splits, the decode-once
cache, what training reads (image sets, samplers), preprocessing, inspection."""
