"""Reports for analysts: the self-contained HTML report of a plan and of a backtest (`html`,
Jinja2 templates in `templates/`)."""
