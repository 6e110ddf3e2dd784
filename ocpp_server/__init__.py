"""The OCPP-J central system: OCPP 1.6J and 2.0.1 piles over websockets (issue 4, server side).

Module map: ``service`` (entry point), ``server`` (websocket handshake, auth, connections), ``rpc``
(version-free OCPP-J framing with the specification's error codes), ``v16`` / ``v201`` (the only modules
importing ``ocpp.v16`` / ``ocpp.v201``), ``registry`` (piles, lifecycle, tokens, violations),
``sessions`` (transactions), ``measurands`` (meter values -> catalogue metrics), ``bus`` (MQTT),
``commands`` (operator commands), ``smart`` (site-limit allocation), ``passwords``, ``settings``,
``metrics``, ``cli``.
"""
