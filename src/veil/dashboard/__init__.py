"""The transparency dashboard: its page, assets, and the queries behind them."""
