"""Process plumbing shared by models, loss, training and export: process groups and checkpoint files."""
