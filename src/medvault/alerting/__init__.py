"""The continuous monitor at work (issue #13): the pure detection core (:mod:`medvault.monitor`)
run online over every ledger event, with what a privacy officer needs around it.

    worker.py      tails the ledger, scores, raises alerts (ledgered), saves its state
    directory.py   the user/patient directory: imported (patients by pseudonym) + the user store
    responses.py   automatic responses per severity (end sessions, step-up, holds) and lifting them
    notify.py      syslog (RFC 5424 / ATNA) and a signed webhook per alert
"""
