"""Reading and writing videos and images: uint8 [T, H, W, 3] on disk as .npy, .gif or
.mp4, X-T slice pictures as PNG. Every write is atomic (temp file, then rename), so an
interrupted or failed write never leaves a partial file under the requested name."""
