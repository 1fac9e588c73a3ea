"""vidpipe benchmarks (`make bench`); each module measures one target against a baseline."""
