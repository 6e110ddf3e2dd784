"""The demand-response domain: models, baselines, forecasts and the queries the controller and the API share.

Pure modules except the reads in ``fleet``, ``report``, ``program_baseline``, ``forecast_store``,
``forecast_capacity``, ``baselines.load_history`` and the event writes in ``event_writes``. The
``dr_controller`` service (dispatch loop, allocation, OpenADR VEN) and the API both build on it; see
``resources`` for the sign conventions.
"""
