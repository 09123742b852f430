from dualwrite.cli.bench import bench

bench()
