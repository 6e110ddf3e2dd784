"""The charging domain shared by the OCPP central system and the API: the pile registry with its
whole-life supervision (lifecycle, violations), pile passwords, and the charging sessions' queries."""
