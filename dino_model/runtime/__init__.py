"""Process plumbing every layer shares: process groups, checkpoints, atomic writes, git, locks, child servers."""
