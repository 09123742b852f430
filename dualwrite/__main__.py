from dualwrite.cli import main

main()
