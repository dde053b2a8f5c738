"""What is served: the pyfunc model (:mod:`.model`), the ensemble it runs (:mod:`.ensemble`), the
request records it accepts (:mod:`.requests`), and `mlflow models serve` around it (:mod:`.server`)."""
