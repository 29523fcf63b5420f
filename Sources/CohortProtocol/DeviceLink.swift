/// How the server reaches devices outside a direct reply: a round's task goes to every device
/// of a cohort when the round starts. The network transport sends it down each device's
/// stream; the simulator schedules its arrival in virtual time; tests collect it.
public protocol DeviceLink: Sendable {
  func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async
}
