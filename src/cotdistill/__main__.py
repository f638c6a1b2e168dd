"""`python -m cotdistill`, the form launchers take: `accelerate launch -m cotdistill train ...`."""

from cotdistill.cli import main

main()
