"""Jobs outside the DVC graph: evaluate any model on any data, promote, predict."""
