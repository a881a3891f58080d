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
