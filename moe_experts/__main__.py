from moe_experts.cli import main

main()
