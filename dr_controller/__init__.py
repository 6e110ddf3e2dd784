"""The demand-response controller service: tiered allocation, the closed-loop dispatch cycle, the daily
forecast schedule and the OpenADR 2.0b VEN.

The domain it shares with the API (resources, baselines, events, fleet reads, settlement, reports and
forecasts) lives in ``core.dr``; see ``core.dr.resources`` for the sign conventions.
"""
