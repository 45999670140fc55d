"""Fleet operations: the broker connection, pushing packages, deploy verdicts, results from
devices, the fleet table, and the certificates and ACL a fleet's broker needs.

Nothing here imports ``compiler.compile`` or ``compiler.recipe``: a package is the contract's
(``agent.contract.Package``), whoever wrote it.
"""
