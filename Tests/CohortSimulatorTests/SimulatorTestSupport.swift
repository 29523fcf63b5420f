import CohortCore

/// A scenario with an inline logistic-regression plan (60 inputs, 10 classes) and `body` below it.
func makeScenario(_ body: String, goal: Int = 5) throws -> Scenario {
  let plan =
    "plan: {name: p, model: {kind: logistic_regression, inputs: 60, classes: 10}, "
    + "server: {cohort: {goal: \(goal)}}}\n"
  return try Scenario.parse(yaml: plan + body, file: "/tmp/cohort-simulator-test/scenario.yaml")
}

/// A population plan with constant speeds, so timings are exact.
func constantPlan(
  compute: Double = 50, download: Double = 1e6, upload: Double = 2.5e5, dropout: Double = 0,
  availability: PopulationPlan.Availability = .always, checkInInterval: Double = 600
) -> PopulationPlan {
  var plan = PopulationPlan()
  plan.compute = .constant(compute)
  plan.download = .constant(download)
  plan.upload = .constant(upload)
  plan.dropout = dropout
  plan.availability = availability
  plan.checkInInterval = checkInInterval
  return plan
}
