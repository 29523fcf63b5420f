import CohortCore
import CohortDevice
import Foundation
import Testing

@Suite struct EligibilityTests {
  @Test func aDaytimeWindowIncludesItsStartAndExcludesItsEnd() throws {
    let window = try HourWindow(parsing: "9-17")
    #expect((0..<24).filter { window.contains(hour: $0) } == Array(9..<17))
  }

  @Test func aWindowAcrossMidnightWraps() throws {
    let window = try HourWindow(parsing: "22-6")
    #expect((0..<24).filter { window.contains(hour: $0) } == [0, 1, 2, 3, 4, 5, 22, 23])
    #expect(try HourWindow(parsing: "0-24").contains(hour: 13))
    let late = try HourWindow(parsing: "20-24")
    #expect((0..<24).filter { late.contains(hour: $0) } == [20, 21, 22, 23])
    let lastHour = try HourWindow(parsing: "23-0")
    #expect((0..<24).filter { lastHour.contains(hour: $0) } == [23])
    #expect(window.description == "22-6")
  }

  @Test func theDecisionGivesTheHoursReason() throws {
    let policy = EligibilityPolicy(hours: try HourWindow(parsing: "22-6"))
    #expect(policy.decide(hour: 23, loadAverage: nil, examples: 5) == .eligible)
    #expect(policy.decide(hour: 3, loadAverage: nil, examples: 5).isEligible)
    let day = policy.decide(hour: 14, loadAverage: nil, examples: 5)
    #expect(!day.isEligible)
    #expect(day.reasons == ["outside the allowed hours 22-6 (now 14)"])
    #expect(day.description == "not eligible: outside the allowed hours 22-6 (now 14)")
    #expect(!policy.decide(hour: 6, loadAverage: nil, examples: 5).isEligible)
  }

  @Test func theLoadBoundIsInclusiveAndUnknownLoadIsNotHeldAgainstTheDevice() {
    let policy = EligibilityPolicy(maximumLoadAverage: 2)
    #expect(policy.decide(hour: 12, loadAverage: 1.5, examples: 1).isEligible)
    #expect(policy.decide(hour: 12, loadAverage: 2, examples: 1).isEligible)
    let busy = policy.decide(hour: 12, loadAverage: 3.2, examples: 1)
    #expect(busy.reasons == ["the 1-minute load average 3.2 is above the maximum 2"])
    #expect(policy.decide(hour: 12, loadAverage: nil, examples: 1).isEligible)
    #expect(EligibilityPolicy().decide(hour: 12, loadAverage: 50, examples: 1).isEligible)
  }

  @Test func tooFewExamplesAndEveryFailedConditionAreReported() throws {
    #expect(EligibilityPolicy().minimumExamples == 1)
    #expect(
      EligibilityPolicy().decide(hour: 0, loadAverage: nil, examples: 0).reasons == [
        "0 unexpired examples, fewer than the 1 needed"
      ])
    let policy = EligibilityPolicy(
      hours: try HourWindow(parsing: "1-5"), maximumLoadAverage: 0.5, minimumExamples: 10)
    let decision = policy.decide(hour: 12, loadAverage: 0.75, examples: 1)
    #expect(
      decision.reasons == [
        "outside the allowed hours 1-5 (now 12)", "the 1-minute load average 0.75 is above the maximum 0.5",
        "1 unexpired example, fewer than the 10 needed",
      ])
    #expect(
      policy.decide(SystemConditions(hour: 2, loadAverage: 0.1), examples: 10) == .eligible)
  }

  @Test func parserErrorsNameTheFlag() {
    let cases: [(text: String, expected: String)] = [
      ("22", "--hours is '22'; expected start-end"),
      ("a-b", "--hours is 'a-b'"),
      ("1-2-3", "--hours is '1-2-3'"),
      ("-1-5", "--hours is '-1-5'"),
      ("22-25", "--hours 22-25: the end hour 25 is outside 0–24"),
      ("6-6", "--hours 6-6 is an empty window"),
    ]
    for (text, expected) in cases {
      let error = #expect(throws: CohortError.self) { try HourWindow(parsing: text) }
      #expect(error?.message.hasPrefix(expected) == true, "\(error?.message ?? "") for \(text)")
      #expect(error?.fix.contains("--hours") == true)
    }
    let other = #expect(throws: CohortError.self) { try HourWindow(parsing: "9", flag: "--train-hours") }
    #expect(other?.message.hasPrefix("--train-hours is '9'") == true)

    let load = #expect(throws: CohortError.self) {
      try EligibilityPolicy(hours: nil, maximumLoad: "high")
    }
    #expect(load?.message.hasPrefix("--max-load is 'high'") == true)
    let negative = #expect(throws: CohortError.self) {
      try EligibilityPolicy(hours: nil, maximumLoad: "-1")
    }
    #expect(negative?.message.hasPrefix("--max-load is -1.0") == true)
    let examples = #expect(throws: CohortError.self) {
      try EligibilityPolicy(hours: nil, maximumLoad: nil, minimumExamples: -2)
    }
    #expect(examples?.message.hasPrefix("--min-examples is -2") == true)
  }

  @Test func commandLineValuesMakeAPolicy() throws {
    let policy = try EligibilityPolicy(hours: " 22 - 6 ", maximumLoad: "2.5", minimumExamples: 20)
    #expect(
      policy
        == EligibilityPolicy(
          hours: try HourWindow(start: 22, end: 6), maximumLoadAverage: 2.5, minimumExamples: 20))
    #expect(try EligibilityPolicy(hours: nil, maximumLoad: nil) == EligibilityPolicy())
  }

  @Test func aPolicyRoundTripsThroughJSONWithTheWindowAsText() throws {
    let policy = EligibilityPolicy(
      hours: try HourWindow(start: 22, end: 6), maximumLoadAverage: 1.5, minimumExamples: 3)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let json = String(decoding: try encoder.encode(policy), as: UTF8.self)
    #expect(json == #"{"hours":"22-6","maximumLoadAverage":1.5,"minimumExamples":3}"#)
    #expect(try JSONDecoder().decode(EligibilityPolicy.self, from: Data(json.utf8)) == policy)
    #expect(throws: DecodingError.self) {
      try JSONDecoder().decode(HourWindow.self, from: Data(#""30-2""#.utf8))
    }
  }

  @Test func systemConditionsReadTheHourInTheCalendarsTimeZoneAndTheLoadAverage() throws {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = try #require(TimeZone(identifier: "Asia/Tokyo"))
    // 2026-03-01T12:00:00Z is 21:00 in Tokyo.
    #expect(
      SystemConditions.localHour(at: Date(timeIntervalSince1970: 1_772_366_400), calendar: calendar) == 21)

    #expect(SystemConditions.parseLoadAverage("0.52 0.58 0.59 1/467 12345\n") == 0.52)
    #expect(SystemConditions.parseLoadAverage("") == nil)
    #expect(SystemConditions.parseLoadAverage("busy 1 2") == nil)
    #expect(SystemConditions.loadAverage(path: "/nonexistent/loadavg") == nil)
    let read = SystemConditions.read(at: Date(timeIntervalSince1970: 1_772_366_400), calendar: calendar)
    #expect(read.hour == 21)
    if FileManager.default.fileExists(atPath: "/proc/loadavg") { #expect(read.loadAverage != nil) }
  }
}
