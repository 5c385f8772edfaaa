"""Cases: the matrix (model x backend x device x precision x batch), and how one case is
prepared, warmed and checked — in pytest, in a worker, or outside pytest (offline)."""
