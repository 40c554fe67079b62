from krewe.cli import main

main()
