"""The photos: dataset layouts, image decoding, the decode-once cache, inspection, preprocessing, samplers."""
