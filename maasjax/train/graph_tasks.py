"""Graph tasks: node classification (transductive), graph classification, multi-label graphs."""
