"""Pure network modules (no file I/O): the VPT/STEVE-1 policy, MineCLIP and the prior CVAE."""
