"""NIST StRD certified values (https://www.itl.nist.gov/div898/strd/lls/lls.shtml) of the
fixtures in tests/data: coefficients intercept first."""

NORRIS_B = (-0.262323073774029, 1.00211681802045)
NORRIS_RSS = 26.6173985294224
LONGLEY_B = (
    -3482258.63459582,
    15.0618722713733,
    -0.358191792925910e-01,
    -2.02022980381683,
    -1.03322686717359,
    -0.511041056535807e-01,
    1829.15146461355,
)
PONTIUS_B = (0.673565789473684e-03, 0.732059160401003e-06, -0.316081871345029e-14)
# Wampler1 and Wampler2 (x = 0..20, y a degree-5 polynomial): exact fits, so the certified
# coefficients are the polynomial's
WAMPLER1_B = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
WAMPLER2_B = (1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5)
