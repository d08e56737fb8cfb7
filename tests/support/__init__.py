"""Support code shared by the test suites (checkers, harnesses)."""
