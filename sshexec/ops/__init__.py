"""The operator's verbs other than run: check a worker's health, pull images ahead, collect garbage,
and list or break what is held on workers. They reach workers through ssh/ and worker/, never through run/."""
