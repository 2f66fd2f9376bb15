"""The one vocabulary of quick actions a recommended action may point to.

The feed renders a button per `quick_action_id`; integrations (calendar, email drafts) key on it.
"""

from __future__ import annotations

QUICK_ACTIONS: dict[str, str] = {
    "schedule_meeting": "Schedule a meeting",
    "send_email": "Send an email",
    "draft_expansion_email": "Draft an expansion email",
    "request_case_study": "Ask for a case study",
    "request_referral": "Ask for a referral",
    "schedule_qbr": "Schedule a QBR",
    "escalate_support": "Escalate with support",
    "engage_executive": "Engage the executive sponsor",
    "enablement_session": "Offer an enablement session",
    "review_account": "Review the account",
}

ACTION_OF_TYPE: dict[str, str] = {
    "usage_spike": "review_account",
    "usage_drop": "schedule_meeting",
    "usage_pattern_change": "review_account",
    "adoption_trend": "send_email",
    "feature_discovery": "enablement_session",
    "power_users": "send_email",
    "going_dark": "send_email",
    "increased_activity": "schedule_meeting",
    "stakeholder_shift": "engage_executive",
    "declining_usage": "schedule_meeting",
    "silent_account": "engage_executive",
    "champion_left": "engage_executive",
    "health_drop": "schedule_meeting",
    "support_surge": "escalate_support",
    "detractor_nps": "schedule_meeting",
    "entitlement_limit": "draft_expansion_email",
    "case_study_candidate": "request_case_study",
    "referral_candidate": "request_referral",
    "outperforming": "send_email",
    "underperforming": "enablement_session",
    "qbr_due": "schedule_qbr",
    "outreach_window": "send_email",
}
