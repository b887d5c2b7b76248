"""Optional networks beside the denoisers (the FID-C10 classifier, ...)."""
