"""Query performance tested in CI: the gate that judges what a block of code made the
database do (:mod:`.gate`), the committed baseline (:mod:`.baseline`), its outputs
(:mod:`.output`), ``querywatch check`` (:mod:`.check`), the test helpers
(:mod:`.testing`) and the pytest plugin (:mod:`.pytest_plugin`)."""
