"""What the tests share beside their fixtures: real repositories, the doubles, running the dispatcher
and reading what it recorded. conftest.py holds only the fixtures and hooks, built from these.

No module here is named test_*: pytest collects none of them as tests."""
