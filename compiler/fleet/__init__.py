"""Fleet operations: the broker connection, pushing packages, deploy verdicts, results from
devices, the fleet table, and the certificates and ACL a fleet's broker needs."""
