"""The Predictive Demand Engine: models, selection and the forecast stage."""

from pipeline.forecast.engine import ForecastResult, read_forecast, run_forecast, select_and_forecast

__all__ = ["ForecastResult", "read_forecast", "run_forecast", "select_and_forecast"]
