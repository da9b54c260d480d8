"""Local CRM analytics: RFM, lifetime value, health, lifecycle, segments."""
