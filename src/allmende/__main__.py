from allmende.cli import main

main()
