"""The one composition root: builds backends, the p2p node, policy and capability factories."""
