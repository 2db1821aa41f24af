"""Run records and their storage: the lowest layer, shared by predictor/ and service/."""
