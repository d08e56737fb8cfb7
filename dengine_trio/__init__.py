"""dengine_trio: embedded Raft consensus on trio."""
