"""The run report: the events log (events), the data made from it (model), the HTML page (page)."""
